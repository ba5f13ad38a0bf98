# 地域（《服务号用户管理》：给北京、上海的用户分别推当地门店活动）
#
# 从 followers.city 得出，每人一个。一线城市各自一个标签，新一线城市合为
# 一个，其余已知城市为地域-其他；城市为空或缺失的粉丝不打地域标签。
# 城市名同时接受“广州”和“广州市”两种写法。微信接口返回的城市常常为空，
# 城市最好来自自己的数据（收货地址、留资表单、分地区的引流二维码）。

# -- 城市列表（可调） ----------------------------------------------------------
let region_beijing = ["北京", "北京市"]
let region_shanghai = ["上海", "上海市"]
let region_guangzhou = ["广州", "广州市"]
let region_shenzhen = ["深圳", "深圳市"]
let region_new_tier1 = ["成都", "成都市", "重庆", "重庆市", "杭州", "杭州市", "武汉", "武汉市", "西安", "西安市", "苏州", "苏州市", "天津", "天津市", "南京", "南京市", "长沙", "长沙市", "郑州", "郑州市", "东莞", "东莞市", "青岛", "青岛市", "合肥", "合肥市", "佛山", "佛山市", "宁波", "宁波市"]

group "地域" exclusive {
  tag "地域-北京" when city in region_beijing {
    priority 20
  }

  tag "地域-上海" when city in region_shanghai {
    priority 20
  }

  tag "地域-广州" when city in region_guangzhou {
    priority 20
  }

  tag "地域-深圳" when city in region_shenzhen {
    priority 20
  }

  tag "地域-新一线" when city in region_new_tier1 {
    description "成都、重庆、杭州、武汉、西安等15个新一线城市"
    priority 20
  }

  tag "地域-其他" when city not in region_beijing
      and city not in region_shanghai
      and city not in region_guangzhou
      and city not in region_shenzhen
      and city not in region_new_tier1
      and city != "" {
    description "城市已知，但不在上面的列表里"
    priority 20
  }
}
